"""``pgingest adopt pgai``: take over a pgai vectorizer in place, keeping every vector it paid for.

pgai (Timescale's vectorizer, ``pip install pgai``) keeps its catalog in ``ai.vectorizer``: for
each vectorizer the source table and its primary key (``source_pk``), the trigger that queues
changed keys into ``<queue_schema>.<queue_table>`` (and ``queue_failed_table``), and the
configuration (``config``: loading, parsing, chunking, formatting, embedding, destination,
indexing, scheduling, processing). Its worker writes ``<table>_embedding_store`` (the key
columns, ``chunk_seq``, ``chunk``: the *formatted* text it sent to the provider, ``embedding``).

Adoption, per vectorizer (docs/migrating-from-pgai.md has the mapping and the runbook):

1. :func:`plan` reads the catalog and maps it: a pgingest source on the same table (same key,
   the loading column as body, or pgai's template as a ``{column}`` template), a model (same
   provider endpoint, model id, dimensions, key variable), a chunking profile as close to pgai's
   character splitter as pgingest's token splitter gets. What cannot be mapped is a refusal
   (:class:`Refusal`, naming the option); what is mapped approximately is listed in
   ``Plan.differences``. ``--dry-run`` prints this and stops.
2. The model is registered (its own transaction: a rerun after a failed cut-over reuses it).
3. The cut-over, ONE transaction (:func:`_cutover`). First, with the application's writes going
   on, pgai's store rows are copied as the model's chunks and vectors under doc_ids taken from
   pgingest's sequence (``chunk_hash`` = sha256 of ``chunk``, which is exactly the text pgai
   embedded; vectors L2-normalised as pgingest stores them), invisible until the commit. Then the
   application table is locked against writes (SHARE ROW EXCLUSIVE: reads go on), the vectorizer
   marked ``disabled``, pgai's two triggers disabled, the source attached (``add_source(...,
   backfill => false)``: pgingest's capture starts), every row registered (the source's own
   expressions and hash; a row with copied vectors gets their doc_id), what changed during the
   copy reconciled, the versions embedded recorded, the rows pgai had still queued (or failed, or
   never embedded, or re-embedded during the copy) queued for the model, every row for the other
   live models, and pgai's queue items deleted (moved). No provider is called. A write committed
   before the lock went through pgai's trigger and is moved with the queue; one waiting on the
   lock goes through pgingest's trigger after the commit: none lost, none twice.
4. The model's ANN index is built (``CREATE INDEX CONCURRENTLY``, outside the cut-over).

Nothing of pgai's is dropped unless ``--drop-pgai`` is given on a later run, after
:func:`verify` passed. A second run finds the vectorizer adopted and changes nothing.

The connection's role must be a superuser or own the pgingest schema (adoption writes pgingest's
registry, chunks and store directly) and own the application table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pgingest import cli_support
from pgingest.cli_support import EXIT_ERROR, EXIT_INVALID, EXIT_REFUSED

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "AdoptResult",
    "Plan",
    "Refusal",
    "add_adopt_commands",
    "adopt",
    "drop_pgai",
    "plan",
    "plan_all",
    "verify",
]

APPLICATION_NAME = "pgingest-adopt"
# pgai's character splitters count characters; pgingest's heuristic tokenizer budgets a token
# per 3 UTF-8 bytes. A profile of ceil(chunk_size / 3) tokens cuts chunks of about chunk_size
# characters of English text.
CHARS_PER_TOKEN = 3
# OpenAI's embedding models accept 8,191 tokens; pgingest refuses a profile above the model's limit.
OPENAI_MAX_INPUT_TOKENS = 8191
DEFAULT_MAX_INPUT_TOKENS = 512
OPENAI_BASE_URL = "https://api.openai.com/v1"
OLLAMA_BASE_URL = "http://localhost:11434"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
# The distances pgingest ranks by (register_model's metric), and the pgvector operator classes of
# an HNSW index that are one of them. pgai accepts vector_cosine_ops, vector_ip_ops and
# vector_l1_ops; L1 (taxicab) distance has no pgingest metric: refused unless --metric chooses one.
METRICS = ("cosine", "ip", "l2")
_OPCLASS_METRICS = {
    "vector_cosine_ops": "cosine",
    "vector_ip_ops": "ip",
    "vector_l2_ops": "l2",
    "halfvec_cosine_ops": "cosine",
    "halfvec_ip_ops": "ip",
    "halfvec_l2_ops": "l2",
}
# string.Template's placeholders (pgai formats with Template.substitute): $$, $name, ${name}.
_TEMPLATE_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|\{(?P<braced>[_a-z][_a-z0-9]*)\}|(?P<invalid>))",
    re.IGNORECASE | re.ASCII,
)
_PGINGEST_PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_$]*\}")


class Refusal(Exception):
    """A vectorizer option pgingest cannot map; the message names it."""

    def __init__(self, vectorizer: str, option: str, message: str) -> None:
        super().__init__(f"vectorizer {vectorizer}: {option}: {message}")
        self.vectorizer = vectorizer
        self.option = option


@dataclass
class Plan:
    """What adopting one vectorizer does (``--dry-run`` prints it)."""

    vectorizer_id: int
    vectorizer: str
    table: str  # schema-qualified, quoted as needed
    table_schema: str
    table_name: str
    key_columns: list[str]
    key_types: list[str]
    source: str
    body: str | None
    template: str | None
    model: str
    model_id: str
    dimensions: int
    base_url: str
    api_key_env: str | None
    request_dimensions: bool
    max_input_tokens: int
    metric: str
    storage: str
    index_options: dict[str, int]
    chunk_tokenizer: str
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    store_schema: str
    store_table: str
    view_schema: str
    view_name: str
    queue_schema: str
    queue_table: str
    queue_failed_table: str | None
    trigger_name: str
    scheduling: str | None = None
    store_rows: int = 0
    store_keys: int = 0
    orphan_rows: int = 0
    queued: int = 0
    table_rows: int = 0
    state: str = "new"  # new | adopted
    model_state: str = "active"  # what register_model makes it: active, or shadow
    differences: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan, in words."""
        mapping = f"body {self.body}" if self.body is not None else f"template {self.template!r}"
        out = [
            f"vectorizer {self.vectorizer} (id {self.vectorizer_id}) on {self.table} "
            f"(key {', '.join(self.key_columns)}): {self.state}",
            f"  source   {self.source}: {mapping}, backfill off (rows registered at cut-over)",
            f"  model    {self.model}: {self.model_id}, {self.dimensions} dimensions, "
            f"{self.metric}, {self.storage}, base_url {self.base_url}, key "
            f"{'$' + self.api_key_env if self.api_key_env else 'none'}, max_input_tokens "
            f"{self.max_input_tokens}; {self.model_state}"
            + (" (pgingest model swap makes it active)" if self.model_state == "shadow" else ""),
            f"  profile  tokenizer {self.chunk_tokenizer}, max_tokens {self.chunk_max_tokens}, "
            f"overlap {self.chunk_overlap_tokens}, no title in chunks",
            f"  vectors  {self.store_schema}.{self.store_table}: {self.store_rows} rows of "
            f"{self.store_keys} keys adopted as chunks and vectors of {self.model} (no provider "
            f"call); {self.orphan_rows} rows of keys no longer in the table skipped",
            f"  queue    {self.queued} keys queued in {self.queue_schema}.{self.queue_table}"
            f"{' and ' + self.queue_failed_table if self.queue_failed_table else ''}: moved "
            f"to pgingest_{self.model}; {self.table_rows} rows in the table",
            f"  cut-over one transaction: the vectors copied first (writes go on), then "
            f"{self.table} locked (SHARE ROW EXCLUSIVE: reads go on, writes wait) for "
            f"ai.vectorizer.disabled, pgai triggers {self.trigger_name} and "
            f"{self.trigger_name}_truncate disabled, pgingest capture on, rows registered, "
            "queue moved",
            f"  index    pgingest.store_{self.model}_idx: hnsw "
            f"{json.dumps(self.index_options) if self.index_options else '(defaults)'}, "
            f"built concurrently after the cut-over",
            f"  kept     pgai's store, view {self.view_schema}.{self.view_name}, queue tables "
            f"and catalog row (pgingest adopt pgai --drop-pgai after verification)",
        ]
        out += [f"  differs  {d}" for d in self.differences]
        return out


@dataclass
class AdoptResult:
    """What :func:`adopt` did for one vectorizer."""

    vectorizer: str
    source: str
    model: str
    changed: bool
    rows_registered: int = 0
    chunks_adopted: int = 0
    documents_embedded: int = 0
    queued: int = 0
    moved_from_pgai: int = 0
    lock_wait_s: float = 0.0
    lock_held_s: float = 0.0
    cutover_s: float = 0.0
    compat_view: str | None = None
    index: str | None = None
    steps: dict[str, float] = field(default_factory=dict)


# -- the catalog -----------------------------------------------------------------------------


def _sanitize(name: str, prefix: str = "") -> str:
    s = re.sub(r"[^a-z0-9_]", "_", (prefix + name).lower())
    if not s or not s[0].isalpha():
        s = "p" + s
    return s[:30]


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _vectorizers(conn: psycopg.Connection[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    if _one(conn, "SELECT to_regclass('ai.vectorizer') IS NOT NULL") is not True:
        raise LookupError("pgai is not installed in this database (no table ai.vectorizer)")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT v.id, v.name, v.source_schema, v.source_table, v.source_pk, v.trigger_name,"
            " v.queue_schema, v.queue_table, v.queue_failed_table, v.config, v.disabled"
            " FROM ai.vectorizer AS v"
            " WHERE cardinality(%s::text[]) = 0 OR v.name = ANY (%s::text[]) ORDER BY v.id",
            (list(names), list(names)),
        ).fetchall()
    missing = sorted(set(names) - {r["name"] for r in rows})
    if missing:
        raise LookupError(f"no pgai vectorizer named {', '.join(missing)}")
    return rows


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute AS a"
        " WHERE a.attrelid = (SELECT c.oid FROM pg_catalog.pg_class AS c"
        "   INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
        "   WHERE n.nspname = %s AND c.relname = %s)"
        " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _primary_key(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_catalog.pg_index AS i"
        " CROSS JOIN LATERAL unnest(i.indkey::smallint[]) WITH ORDINALITY AS k (attnum, n)"
        " INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indisprimary AND i.indrelid = ("
        "   SELECT c.oid FROM pg_catalog.pg_class AS c"
        "   INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
        "   WHERE n.nspname = %s AND c.relname = %s)"
        " ORDER BY k.n",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows]


def map_template(vectorizer: str, template: str, body: str, columns: Sequence[str]) -> str | None:
    """pgai's formatting template (``string.Template``: ``$chunk``, ``$column``, ``${column}``,
    ``$$``) as a pgingest ``{column}`` template over the whole row, ``$chunk`` standing for the
    loading column; None when it is ``$chunk`` alone (the loading column is the body)."""
    if _PGINGEST_PLACEHOLDER_RE.search(template):
        raise Refusal(
            vectorizer,
            "formatting",
            f"the template {template!r} holds text in braces, which pgingest's templates read "
            "as a placeholder",
        )
    out: list[str] = []
    pos = 0
    names: list[str] = []
    for m in _TEMPLATE_RE.finditer(template):
        out.append(template[pos : m.start()])
        pos = m.end()
        if m.group("escaped"):
            out.append("$")
            continue
        name = m.group("named") or m.group("braced")
        if name is None:
            raise Refusal(vectorizer, "formatting", f"the template {template!r} has a bare $")
        if name == "chunk":
            out.append("{" + body + "}")
            names.append(body)
            continue
        if name not in columns:
            raise Refusal(
                vectorizer,
                "formatting",
                f"the template names ${name}, which is not a column of the table",
            )
        out.append("{" + name + "}")
        names.append(name)
    out.append(template[pos:])
    mapped = "".join(out)
    if mapped == "{" + body + "}":
        return None
    if body not in names:
        raise Refusal(vectorizer, "formatting", f"the template {template!r} has no $chunk")
    return mapped


def _plan_one(
    conn: psycopg.Connection[Any],
    v: dict[str, Any],
    *,
    source: str | None,
    model: str | None,
    max_input_tokens: int | None,
    metric: str | None = None,
) -> Plan:
    name = v["name"]
    cfg = v["config"]
    schema, table = v["source_schema"], v["source_table"]
    columns = _columns(conn, schema, table)
    if not columns:
        raise Refusal(name, "source", f"table {schema}.{table} does not exist")
    key = [c["attname"] for c in sorted(v["source_pk"], key=lambda c: c["pknum"])]
    if _primary_key(conn, schema, table) != key:
        raise Refusal(
            name,
            "source_pk",
            f"the primary key of {schema}.{table} is no longer ({', '.join(key)}), the key of "
            "pgai's store",
        )
    differences: list[str] = []

    loading = cfg.get("loading") or {}
    if loading.get("implementation") != "column":
        raise Refusal(
            name,
            "loading",
            f"loading implementation {loading.get('implementation')!r} (pgingest reads the text "
            "from a column of the row; it loads nothing from URIs)",
        )
    body = loading["column_name"]
    body_type = columns.get(body)
    if body_type is None:
        raise Refusal(name, "loading", f"column {body} is not in {schema}.{table}")
    if body_type == "bytea":
        raise Refusal(
            name, "loading", f"column {body} is bytea (documents to parse); pgingest embeds text"
        )
    parsing = (cfg.get("parsing") or {}).get("implementation", "auto")
    if parsing not in ("auto", "none"):
        raise Refusal(
            name, "parsing", f"parsing implementation {parsing!r} (pgingest does not parse files)"
        )
    if loading.get("retries") not in (None, 0):
        differences.append(
            f"loading: retries ({loading.get('retries')}) dropped: a column load cannot fail "
            "in pgingest; failed embeddings are retried by the worker, then dead-lettered"
        )

    destination = cfg.get("destination") or {}
    if destination.get("implementation") != "table":
        raise Refusal(
            name,
            "destination",
            f"destination implementation {destination.get('implementation')!r} (pgingest adopts "
            "a store table; embeddings kept in a column of the source table are not adopted)",
        )

    formatting = cfg.get("formatting") or {}
    if formatting.get("implementation") != "python_template":
        raise Refusal(
            name,
            "formatting",
            f"formatting implementation {formatting.get('implementation')!r}",
        )
    template = map_template(name, formatting.get("template", "$chunk"), body, list(columns))
    if template is not None:
        differences.append(
            f"formatting: pgai applied {formatting.get('template')!r} to every chunk; pgingest "
            f"applies {template!r} to the row, then chunks it: after a row's next edit only the "
            "chunks that hold the template's text carry it (adopted vectors are unchanged)"
        )

    embedding = cfg.get("embedding") or {}
    impl = embedding.get("implementation")
    model_id = embedding.get("model")
    dimensions = embedding.get("dimensions")
    if impl == "openai":
        base_url = embedding.get("base_url") or OPENAI_BASE_URL
        api_key_env = embedding.get("api_key_name") or "OPENAI_API_KEY"
        request_dimensions = model_id != "text-embedding-ada-002"
        default_limit = OPENAI_MAX_INPUT_TOKENS
        if embedding.get("user"):
            differences.append("embedding: the OpenAI 'user' field is not sent by pgingest")
    elif impl == "ollama":
        base_url = (embedding.get("base_url") or OLLAMA_BASE_URL).rstrip("/") + "/v1"
        api_key_env = None
        request_dimensions = False
        default_limit = DEFAULT_MAX_INPUT_TOKENS
        differences.append(
            "embedding: Ollama is called through its OpenAI-compatible /v1/embeddings"
            + ("; options and keep_alive are not sent" if embedding.get("options") else "")
        )
        if embedding.get("keep_alive") and not embedding.get("options"):
            differences.append("embedding: Ollama keep_alive is not sent")
    else:
        raise Refusal(
            name,
            "embedding",
            f"embedding implementation {impl!r} (pgingest calls OpenAI-compatible "
            "/v1/embeddings endpoints: openai and ollama are adopted)",
        )
    if not isinstance(dimensions, int) or not model_id:
        raise Refusal(name, "embedding", "the embedding config has no model or dimensions")

    chunking = cfg.get("chunking") or {}
    cimpl = chunking.get("implementation")
    if cimpl in ("character_text_splitter", "recursive_character_text_splitter"):
        size = int(chunking.get("chunk_size", 800))
        overlap = int(chunking.get("chunk_overlap", 400))
        max_tokens = max(16, math.ceil(size / CHARS_PER_TOKEN))
        overlap_tokens = min(math.ceil(overlap / CHARS_PER_TOKEN), max_tokens // 2)
        differences.append(
            f"chunking: pgai's {cimpl} ({size} characters, overlap {overlap}) becomes "
            f"pgingest's token splitter ({max_tokens} heuristic tokens of ~{CHARS_PER_TOKEN} "
            f"bytes, overlap {overlap_tokens}, paragraphs > lines > sentences > words): the "
            "adopted chunks stay as pgai cut them; a row is re-chunked the pgingest way at its "
            "next edit"
        )
        if overlap_tokens * CHARS_PER_TOKEN < overlap:
            differences.append(
                f"chunking: pgai's overlap ({overlap} characters) is more than half a chunk; "
                f"pgingest overlaps at most half ({overlap_tokens} tokens)"
            )
        if chunking.get("is_separator_regex") or (
            cimpl == "character_text_splitter" and chunking.get("separator") not in (None, "\n\n")
        ):
            differences.append(
                "chunking: custom separators are not reproduced (pgingest cuts at paragraphs, "
                "lines, sentences, words)"
            )
    elif cimpl == "none":
        max_tokens = max_input_tokens or default_limit
        overlap_tokens = 0
        differences.append(
            "chunking: pgai embedded each row whole (chunking_none); pgingest cuts rows longer "
            f"than {max_tokens} tokens into chunks"
        )
    else:
        raise Refusal(name, "chunking", f"chunking implementation {cimpl!r}")
    limit = max(max_input_tokens or default_limit, max_tokens)
    storage = "vector"
    if dimensions > 2000:
        storage = "halfvec"
        differences.append(
            f"storage: {dimensions} dimensions are stored as halfvec (16-bit floats): pgvector "
            "indexes vector columns of at most 2,000 dimensions"
        )

    indexing = cfg.get("indexing") or {}
    iimpl = indexing.get("implementation")
    pgai_metric = "cosine"  # what pgai's index ranks by; pgai's default opclass is cosine
    index_options: dict[str, int] = {}
    if iimpl == "hnsw":
        for k in ("m", "ef_construction"):
            if isinstance(indexing.get(k), int):
                index_options[k] = indexing[k]
        opclass = str(indexing.get("opclass") or "vector_cosine_ops")
        known = _OPCLASS_METRICS.get(opclass)
        if known is not None:
            pgai_metric = known
        else:
            distance = "L1 (taxicab) distance" if opclass.endswith("_l1_ops") else "its distance"
            if metric is None:
                raise Refusal(
                    name,
                    "indexing",
                    f"opclass {opclass}: {distance}, which pgingest does not offer (it ranks by "
                    f"{', '.join(METRICS)}); give --metric {'|'.join(METRICS)} to adopt it with "
                    "that metric (searches then rank otherwise than pgai's index)",
                )
            differences.append(
                f"indexing: pgai's opclass {opclass} ({distance}) becomes pgingest's {metric} "
                f"(--metric {metric}): searches rank by {metric} distance, not {distance}"
            )
            pgai_metric = metric
    elif iimpl == "diskann":
        differences.append(
            "indexing: pgai's diskann (pgvectorscale) index becomes pgingest's hnsw index "
            "(metric from its storage layout: cosine)"
        )
    else:
        differences.append(
            f"indexing: pgai's {iimpl or 'default'} indexing: pgingest builds an hnsw index at once"
        )
    if metric is not None and metric != pgai_metric:
        differences.append(
            f"indexing: --metric {metric} replaces pgai's {pgai_metric}: searches rank by "
            f"{metric} distance"
        )
    metric = metric or pgai_metric
    sched = (cfg.get("scheduling") or {}).get("implementation")
    if sched not in (None, "none"):
        differences.append(
            f"scheduling: pgai's {sched} schedule is dropped: pgingest's workers run continuously"
        )
    proc = cfg.get("processing") or {}
    if proc.get("batch_size") or proc.get("concurrency"):
        differences.append(
            "processing: batch_size/concurrency dropped: pgingest sizes batches itself (AIMD); "
            "run as many workers as concurrency"
        )

    src = source or _sanitize(table)
    mdl = model or _sanitize(f"{v['id']}_{table}", "pgai_")
    for what, value in (("--source", src), ("--model", mdl)):
        if not _NAME_RE.match(value):
            raise Refusal(name, what, f"{value!r} is not a valid pgingest name")
    p = Plan(
        vectorizer_id=v["id"],
        vectorizer=name,
        table=_one(conn, "SELECT format('%%I.%%I', %s::text, %s::text)", (schema, table)),
        table_schema=schema,
        table_name=table,
        key_columns=key,
        key_types=[columns[k] for k in key],
        source=src,
        body=body if template is None else None,
        template=template,
        model=mdl,
        model_id=model_id,
        dimensions=dimensions,
        base_url=base_url,
        api_key_env=api_key_env,
        request_dimensions=request_dimensions,
        max_input_tokens=limit,
        metric=metric,
        storage=storage,
        index_options=index_options,
        chunk_tokenizer="heuristic",
        chunk_max_tokens=max_tokens,
        chunk_overlap_tokens=overlap_tokens,
        store_schema=destination["target_schema"],
        store_table=destination["target_table"],
        view_schema=destination.get("view_schema") or schema,
        view_name=destination.get("view_name") or f"{table}_embedding",
        queue_schema=v["queue_schema"],
        queue_table=v["queue_table"],
        queue_failed_table=v.get("queue_failed_table"),
        trigger_name=v["trigger_name"],
        scheduling=sched,
        differences=differences,
    )
    _check_pgingest_side(conn, p, v)
    _count(conn, p)
    return p


def _check_pgingest_side(conn: psycopg.Connection[Any], p: Plan, v: dict[str, Any]) -> None:
    """Refusals on pgingest's side; sets ``p.state`` to ``adopted`` when this adoption is done."""
    row = conn.execute(
        "SELECT s.name, s.relid = to_regclass(%s) FROM pgingest.sources AS s"
        " WHERE s.name = %s OR s.relid = to_regclass(%s)",
        (p.table, p.source, p.table),
    ).fetchall()
    for name, same_table in row:
        if same_table and v["disabled"]:
            if name == p.source:
                p.state = "adopted"  # verify() says whether pgai's trigger stayed off
                return
            raise Refusal(
                p.vectorizer,
                "--source",
                f"{p.table} was adopted as source {name!r}: run again with --source {name}",
            )
        if same_table:
            raise Refusal(
                p.vectorizer,
                "source",
                f"{p.table} is already attached to pgingest as source {name!r} while pgai's "
                "vectorizer is still enabled (pgingest source remove it first)",
            )
        raise Refusal(
            p.vectorizer,
            "--source",
            f"a pgingest source named {name!r} exists on another table (give --source NAME)",
        )
    if v["disabled"]:
        raise Refusal(
            p.vectorizer,
            "disabled",
            "the vectorizer is disabled in pgai (ai.vectorizer.disabled): its store may be "
            "behind its table; enable it and let its worker catch up, or adopt it anyway after "
            "UPDATE ai.vectorizer SET disabled = false",
        )
    m = conn.execute(
        "SELECT m.model_id, m.dimensions, m.state, p.tokenizer, p.max_tokens, p.overlap_tokens,"
        " p.title_in_chunks FROM pgingest.models AS m"
        " INNER JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id WHERE m.name = %s",
        (p.model,),
    ).fetchone()
    if m is not None:
        want = (p.model_id, p.dimensions, p.chunk_tokenizer, p.chunk_max_tokens)
        have = (m[0], m[1], m[3], m[4])
        if m[2] == "retired" or want != have or m[5] != p.chunk_overlap_tokens or m[6]:
            raise Refusal(
                p.vectorizer,
                "--model",
                f"a pgingest model named {p.model!r} exists and is not this adoption's "
                "(give --model NAME)",
            )
    if m is not None:
        p.model_state = m[2]
    elif _one(conn, "SELECT count(*) FROM pgingest.models WHERE state = 'active'"):
        p.model_state = "shadow"
    shared = conn.execute(
        "SELECT string_agg(m.name, ', ' ORDER BY m.name) FROM pgingest.models AS m"
        " INNER JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id"
        " WHERE m.state <> 'retired' AND m.name <> %s AND p.tokenizer = %s AND p.max_tokens = %s"
        " AND p.overlap_tokens = %s AND NOT p.title_in_chunks",
        (p.model, p.chunk_tokenizer, p.chunk_max_tokens, p.chunk_overlap_tokens),
    ).fetchone()
    if shared and shared[0]:
        raise Refusal(
            p.vectorizer,
            "chunking",
            f"the chunking profile it maps to is used by model(s) {shared[0]}, whose workers "
            "would re-chunk the adopted rows (the profile's chunks are shared)",
        )


def _count(conn: psycopg.Connection[Any], p: Plan) -> None:
    from psycopg import sql

    store = sql.Identifier(p.store_schema, p.store_table)
    tbl = sql.Identifier(p.table_schema, p.table_name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in p.key_columns)
    on = sql.SQL(" AND ").join(
        sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in p.key_columns
    )
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(DISTINCT ({keys})), count(*) FILTER (WHERE NOT EXISTS"
            " (SELECT 1 FROM {tbl} AS t WHERE {on})) FROM {store} AS s"
        ).format(keys=keys, tbl=tbl, on=on, store=store)
    ).fetchone()
    assert row is not None
    p.store_rows, p.store_keys, p.orphan_rows = int(row[0]), int(row[1]), int(row[2])
    queues = [sql.Identifier(p.queue_schema, p.queue_table)]
    if p.queue_failed_table:
        queues.append(sql.Identifier(p.queue_schema, p.queue_failed_table))
    union = sql.SQL(" UNION ").join(
        sql.SQL("SELECT {keys} FROM {q}").format(keys=keys, q=q) for q in queues
    )
    p.queued = int(_one(conn, sql.SQL("SELECT count(*) FROM ({u}) AS q").format(u=union)))
    p.table_rows = int(_one(conn, sql.SQL("SELECT count(*) FROM {t}").format(t=tbl)))


def plan_all(
    conn: psycopg.Connection[Any],
    names: Sequence[str] = (),
    *,
    source: str | None = None,
    model: str | None = None,
    max_input_tokens: int | None = None,
    metric: str | None = None,
) -> list[Plan]:
    """The plans of the vectorizers named (all when none); raises :class:`Refusal` on the first
    one that cannot be mapped, ``LookupError`` when pgai or a name is missing. ``metric``: the
    model's metric instead of the one of pgai's index (needed where pgingest has none: L1)."""
    if metric is not None and metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    rows = _vectorizers(conn, names)
    if (source or model) and len(rows) != 1:
        raise ValueError("--source and --model name one vectorizer's objects: pick one with --name")
    return [
        _plan_one(
            conn, v, source=source, model=model, max_input_tokens=max_input_tokens, metric=metric
        )
        for v in rows
    ]


def plan(conn: psycopg.Connection[Any], name: str, **kw: Any) -> Plan:
    """The plan of the vectorizer ``name``."""
    return plan_all(conn, [name], **kw)[0]


# -- adoption --------------------------------------------------------------------------------


def _check_role(conn: psycopg.Connection[Any]) -> None:
    ok = _one(
        conn,
        "SELECT r.rolsuper OR pg_has_role(current_user, n.nspowner, 'MEMBER')"
        " FROM pg_catalog.pg_roles AS r, pg_catalog.pg_namespace AS n"
        " WHERE r.rolname = current_user AND n.nspname = 'pgingest'",
    )
    if not ok:
        raise PermissionError(
            "pgingest adopt pgai runs as a superuser or the owner of the pgingest schema "
            "(it writes pgingest's registry, chunks and store directly)"
        )


def _register_model(conn: psycopg.Connection[Any], p: Plan, allow_insecure_http: bool) -> None:
    if _one(conn, "SELECT count(*) FROM pgingest.models WHERE name = %s", (p.model,)):
        return
    conn.execute(
        "SELECT pgingest.register_model(name => %s, model_id => %s, dimensions => %s,"
        " base_url => %s, storage => %s, metric => %s, max_input_tokens => %s, api_key_env => %s,"
        " index_options => %s::jsonb, request_dimensions => %s, chunk_tokenizer => %s,"
        " chunk_max_tokens => %s, chunk_overlap_tokens => %s, title_in_chunks => false,"
        " allow_insecure_http => %s)",
        (
            p.model,
            p.model_id,
            p.dimensions,
            p.base_url,
            p.storage,
            p.metric,
            p.max_input_tokens,
            p.api_key_env,
            json.dumps(p.index_options),
            p.request_dimensions,
            p.chunk_tokenizer,
            p.chunk_max_tokens,
            p.chunk_overlap_tokens,
            allow_insecure_http,
        ),
    )


def _settle_backfill_fence(
    conn: psycopg.Connection[Any], model: str, timeout_s: float = 60.0
) -> None:
    """Has the model's backfill fix its extent (``backfill_upto``, after its fence: migration
    0021) before the cut-over takes doc_ids, so that it never queues the adopted rows (they would
    be acknowledged as done, 50,000 messages for nothing). Runs the model's backfill steps (what
    its workers would do) until the fence is settled."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(
            "SELECT m.backfill_fence IS NOT NULL AND cardinality(m.backfill_fence) = 0"
            " OR m.backfill_completed_at IS NOT NULL FROM pgingest.models AS m WHERE m.name = %s",
            (model,),
        ).fetchone()
        if row is None or row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the backfill of model {model} waits for transactions that write the captured "
                "tables; run the command again when they have ended"
            )
        conn.execute("SELECT pgingest.backfill_step_v1(%s, 1000, true)", (model,))
        time.sleep(0.1)


def _cutover(
    conn: psycopg.Connection[Any],
    p: Plan,
    *,
    lock_timeout: str,
    compat_view: bool,
    res: AdoptResult,
    before_lock: Callable[[], None] | None = None,
) -> None:
    """One transaction. First, before the table's lock (the application's writes go on), pgai's
    vectors are copied into the model's chunks and store under doc_ids taken from the sequence
    now (invisible to others until the commit). Then, under the lock: pgai off, the source
    attached, every row registered (a row pgai has vectors for gets the doc_id its vectors were
    copied under), what changed since the copy reconciled, the versions recorded, the queues."""
    from psycopg import sql

    tbl = sql.Identifier(p.table_schema, p.table_name)
    store = sql.Identifier(p.store_schema, p.store_table)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in p.key_columns)
    key_json = sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, x.{}").format(sql.Literal(k), sql.Identifier(k)) for k in p.key_columns
        )
    )
    queues = [sql.Identifier(p.queue_schema, p.queue_table)]
    if p.queue_failed_table:
        queues.append(sql.Identifier(p.queue_schema, p.queue_failed_table))
    seq = sql.SQL("nextval(pg_get_serial_sequence('pgingest.documents', 'id'))")
    clock = [time.monotonic()]

    def step(name: str) -> None:
        now = time.monotonic()
        res.steps[name] = round(now - clock[0], 3)
        clock[0] = now

    started = clock[0]
    with conn.transaction():
        profile_id, store_name, queue_name = conn.execute(
            "SELECT m.profile_id, m.store_name, m.queue_name FROM pgingest.models AS m"
            " WHERE m.name = %s",
            (p.model,),
        ).fetchone()  # type: ignore[misc]
        st = sql.Identifier(store_name)
        # -- 1. the copy, before the lock ---------------------------------------------------
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE pgingest_adopt_docs ON COMMIT DROP AS"
                " SELECT k.row_key, {seq} AS doc_id"
                " FROM (SELECT DISTINCT {k} AS row_key FROM {store} AS x) AS k"
            ).format(seq=seq, k=key_json, store=store)
        )
        conn.execute("CREATE UNIQUE INDEX ON pgingest_adopt_docs (row_key)")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE pgingest_adopt_rows ON COMMIT DROP AS"
                " SELECT d.doc_id, (row_number() OVER (PARTITION BY d.doc_id ORDER BY x.chunk_seq)"
                " - 1)::integer AS ordinal, x.chunk, sha256(convert_to(x.chunk, 'UTF8')) AS h,"
                " x.embedding_uuid"
                " FROM {store} AS x INNER JOIN pgingest_adopt_docs AS d ON d.row_key = {k}"
            ).format(store=store, k=key_json)
        )
        conn.execute("ANALYZE pgingest_adopt_docs, pgingest_adopt_rows")
        chunker = (
            f"pgai-adopted {p.vectorizer} (chunks as pgai cut and formatted them; "
            "re-chunked at the next edit)"
        )
        conn.execute(
            "INSERT INTO pgingest.chunks (profile_id, doc_id, ordinal, content, chunk_hash,"
            " token_count, char_start, char_end, chunker)"
            " SELECT %s, a.doc_id, a.ordinal, a.chunk, a.h,"
            " greatest(1, ceil(octet_length(a.chunk) / 3.0))::integer, 0, 0, %s"
            " FROM pgingest_adopt_rows AS a ORDER BY a.doc_id, a.ordinal",
            (profile_id, chunker),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO pgingest.{st} (doc_id, ordinal, chunk_hash, embedding)"
                " SELECT a.doc_id, a.ordinal, a.h, l2_normalize(x.embedding)::{ty}"
                " FROM pgingest_adopt_rows AS a INNER JOIN {store} AS x"
                " ON x.embedding_uuid = a.embedding_uuid ORDER BY a.doc_id, a.ordinal"
            ).format(
                st=st, store=store, ty=sql.SQL("halfvec" if p.storage == "halfvec" else "vector")
            )
        )
        # The versions those vectors are of, as the table holds them now, recorded already
        # (checked against the registration under the lock). The source's expressions, from
        # the mapping add_source() will record.
        mapping = {
            "relid": p.table,
            "key_columns": p.key_columns,
            "key_types": p.key_types,
            "body_column": p.body,
            "template": p.template,
            "title_column": None,
            "metadata_columns": [],
        }
        e_key, e_title, e_body = conn.execute(
            "SELECT pgingest._source_expr(s, 'key'), pgingest._source_expr(s, 'title'),"
            " pgingest._source_expr(s, 'body')"
            " FROM jsonb_populate_record(NULL::pgingest.sources,"
            "   jsonb_set(%s::jsonb, '{relid}', to_jsonb(%s::regclass::oid))) AS s",
            (json.dumps(mapping), p.table),
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            sql.SQL(
                "INSERT INTO pgingest.embedding_state (doc_id, model, content_hash, chunk_count)"
                " SELECT d.doc_id, %s, pgingest._source_hash(n.title, n.body), c.n"
                " FROM (SELECT {ek} AS k, {et} AS title, {eb} AS body FROM {tbl} AS t) AS n"
                " INNER JOIN pgingest_adopt_docs AS d ON d.row_key = n.k"
                " INNER JOIN (SELECT a.doc_id, count(*)::integer AS n FROM pgingest_adopt_rows AS a"
                "   GROUP BY a.doc_id) AS c ON c.doc_id = d.doc_id"
                " ORDER BY d.doc_id"
            ).format(ek=sql.SQL(e_key), et=sql.SQL(e_title), eb=sql.SQL(e_body), tbl=tbl),
            (p.model,),
        )
        step("copy_s")
        if before_lock is not None:
            before_lock()  # tests: writes between the copy and the lock
        # -- 2. the cut-over, under the lock -------------------------------------------------
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(tbl))
        locked = time.monotonic()
        step("lock_wait_s")
        # pgai's worker (if still running) finishes what it holds and takes nothing more.
        for q in queues:
            conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(q))
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(store))
        conn.execute("UPDATE ai.vectorizer SET disabled = true WHERE id = %s", (p.vectorizer_id,))
        if p.scheduling == "timescaledb":
            conn.execute("SELECT ai.disable_vectorizer_schedule(%s)", (p.vectorizer_id,))
        for trg in (p.trigger_name, p.trigger_name + "_truncate"):
            conn.execute(
                sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(tbl, sql.Identifier(trg))
            )
        conn.execute(
            "SELECT pgingest.add_source(name => %s, source_table => %s::regclass, body => %s,"
            " template => %s, backfill => false)",
            (p.source, p.table, p.body, p.template),
        )
        step("pgai_off_source_on_s")
        # Every row registered as the source's backfill would (same expressions, same hash),
        # nothing queued; a row with adopted vectors gets the doc_id they were copied under.
        sid, e_key, e_title, e_meta, e_body = conn.execute(
            "SELECT s.id, pgingest._source_expr(s, 'key'), pgingest._source_expr(s, 'title'),"
            " pgingest._source_expr(s, 'metadata'), pgingest._source_expr(s, 'body')"
            " FROM pgingest.sources AS s WHERE s.name = %s",
            (p.source,),
        ).fetchone()  # type: ignore[misc]
        res.rows_registered = conn.execute(
            sql.SQL(
                "INSERT INTO pgingest.source_rows (doc_id, source_id, row_key, content_hash, title,"
                " metadata)"
                " SELECT coalesce(d.doc_id, {seq}), %s, n.k, pgingest._source_hash(n.title, n.body),"
                " left(n.title, 1024), n.md"
                " FROM (SELECT {ek} AS k, {et} AS title, {em} AS md, {eb} AS body FROM {tbl} AS t)"
                " AS n LEFT JOIN pgingest_adopt_docs AS d ON d.row_key = n.k"
            ).format(
                seq=seq,
                ek=sql.SQL(e_key),
                et=sql.SQL(e_title),
                em=sql.SQL(e_meta),
                eb=sql.SQL(e_body),
                tbl=tbl,
            ),
            (sid,),
        ).rowcount
        conn.execute(
            "UPDATE pgingest.sources SET backfill_rows = %s WHERE id = %s",
            (res.rows_registered, sid),
        )
        step("register_s")
        # Vectors of keys deleted from the table since (or before) the copy: not adopted.
        conn.execute(
            "CREATE TEMP TABLE pgingest_adopt_gone ON COMMIT DROP AS SELECT d.doc_id"
            " FROM pgingest_adopt_docs AS d WHERE NOT EXISTS"
            " (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = d.doc_id)"
        )
        conn.execute(
            "DELETE FROM pgingest.chunks AS c USING pgingest_adopt_gone AS g"
            " WHERE c.profile_id = %s AND c.doc_id = g.doc_id",
            (profile_id,),
        )
        conn.execute(
            sql.SQL(
                "DELETE FROM pgingest.{} AS v USING pgingest_adopt_gone AS g"
                " WHERE v.doc_id = g.doc_id"
            ).format(st)
        )
        res.chunks_adopted = int(
            _one(
                conn,
                "SELECT count(*) FROM pgingest_adopt_rows AS a WHERE NOT EXISTS"
                " (SELECT 1 FROM pgingest_adopt_gone AS g WHERE g.doc_id = a.doc_id)",
            )
        )
        step("gone_s")
        # The rows pgingest must embed: pgai's queued and failed keys (their vectors are an older
        # version's), and keys whose store rows pgai's worker rewrote after the copy.
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE pgingest_adopt_pending ON COMMIT DROP AS"
                " SELECT r.doc_id FROM ({u}) AS x"
                " INNER JOIN pgingest.source_rows AS r ON r.source_id = %s AND r.row_key = {k}"
                " UNION"
                " SELECT a.doc_id FROM pgingest_adopt_rows AS a WHERE NOT EXISTS"
                "  (SELECT 1 FROM {store} AS x WHERE x.embedding_uuid = a.embedding_uuid)"
            ).format(
                u=sql.SQL(" UNION ").join(
                    [sql.SQL("SELECT {keys} FROM {q}").format(keys=keys, q=q) for q in queues]
                    + [
                        sql.SQL(
                            "SELECT {keys} FROM {store} AS s WHERE NOT EXISTS (SELECT 1 FROM"
                            " pgingest_adopt_rows AS a WHERE a.embedding_uuid = s.embedding_uuid)"
                        ).format(keys=keys, store=store)
                    ]
                ),
                k=key_json,
                store=store,
            ),
            (sid,),
        )
        step("pending_s")
        # The versions recorded before the lock stand where the registration computed the same
        # hash and the row is not pending; the others go (their rows are queued below).
        conn.execute(
            "DELETE FROM pgingest.embedding_state AS e USING pgingest_adopt_docs AS d"
            " WHERE e.doc_id = d.doc_id AND e.model = %s AND (NOT EXISTS ("
            "   SELECT 1 FROM pgingest.source_rows AS r"
            "   WHERE r.doc_id = e.doc_id AND r.content_hash = e.content_hash)"
            " OR EXISTS (SELECT 1 FROM pgingest_adopt_pending AS q WHERE q.doc_id = e.doc_id))",
            (p.model,),
        )
        res.documents_embedded = int(
            _one(
                conn,
                "SELECT count(*) FROM pgingest.embedding_state AS e"
                " INNER JOIN pgingest_adopt_docs AS d ON d.doc_id = e.doc_id WHERE e.model = %s",
                (p.model,),
            )
        )
        step("state_s")
        # Queued for the adopted model: every row whose version it has not embedded (pgai's
        # queue, its failed items, rows it never embedded). Other live models: every row.
        res.queued = conn.execute(
            sql.SQL(
                "INSERT INTO pgmq.{q} (vt, message)"
                " SELECT clock_timestamp(), jsonb_build_object('doc_id', r.doc_id, 'hash',"
                " encode(r.content_hash, 'hex'), 'attempts', 0)"
                " FROM pgingest.source_rows AS r WHERE r.source_id = %s AND NOT EXISTS ("
                "   SELECT 1 FROM pgingest.embedding_state AS e"
                "   WHERE e.doc_id = r.doc_id AND e.model = %s AND e.content_hash = r.content_hash)"
                " ORDER BY r.doc_id"
            ).format(q=sql.Identifier("q_" + queue_name)),
            (sid, p.model),
        ).rowcount
        others = conn.execute(
            "SELECT m.name, m.queue_name FROM pgingest.models AS m"
            " WHERE m.state <> 'retired' AND m.name <> %s ORDER BY m.name",
            (p.model,),
        ).fetchall()
        for _name, other_queue in others:
            conn.execute(
                sql.SQL(
                    "INSERT INTO pgmq.{q} (vt, message)"
                    " SELECT clock_timestamp(), jsonb_build_object('doc_id', r.doc_id, 'hash',"
                    " encode(r.content_hash, 'hex'), 'attempts', 0, 'backfill', true)"
                    " FROM pgingest.source_rows AS r WHERE r.source_id = %s ORDER BY r.doc_id"
                ).format(q=sql.Identifier("q_" + other_queue)),
                (sid,),
            )
        moved = 0
        for q in queues:
            moved += conn.execute(sql.SQL("DELETE FROM {}").format(q)).rowcount
        res.moved_from_pgai = moved
        if compat_view:
            res.compat_view = _compat_view(conn, p, sid, profile_id, store_name)
        for model_name in [p.model] + [o[0] for o in others]:
            conn.execute("SELECT pg_notify('pgingest', %s)", (model_name,))
        step("queue_s")
    step("commit_s")
    done = time.monotonic()
    res.lock_wait_s = res.steps["lock_wait_s"]
    res.lock_held_s = done - locked
    res.cutover_s = done - started


def _compat_view(
    conn: psycopg.Connection[Any], p: Plan, sid: int, profile_id: int, store_name: str
) -> str:
    """pgai's view name and columns over pgingest's chunks and vectors; pgai's own view is
    renamed ``<view>_pgai`` (kept)."""
    from psycopg import sql

    renamed = (p.view_name + "_pgai")[:63]
    if _one(
        conn, "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (p.view_schema, renamed)
    ):
        raise Refusal(p.vectorizer, "--compat-view", f"{p.view_schema}.{renamed} exists already")
    view = sql.Identifier(p.view_schema, p.view_name)
    if _one(
        conn,
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))",
        (p.view_schema, p.view_name),
    ):
        conn.execute(sql.SQL("ALTER VIEW {} RENAME TO {}").format(view, sql.Identifier(renamed)))
    cols = list(_columns(conn, p.table_schema, p.table_name))
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{c} = (r.row_key ->> {l})::{ty}").format(
            c=sql.Identifier(k), l=sql.Literal(k), ty=sql.SQL(ty)
        )
        for k, ty in zip(p.key_columns, p.key_types, strict=True)
    )
    conn.execute(
        sql.SQL(
            "CREATE VIEW {view} AS SELECT"
            " md5(r.doc_id::text || ':' || c.ordinal::text)::uuid AS embedding_uuid,"
            " c.ordinal AS chunk_seq, c.content AS chunk,"
            " v.embedding::vector({dim}) AS embedding, {cols}"
            " FROM pgingest.source_rows AS r"
            " INNER JOIN {tbl} AS t ON {match}"
            " INNER JOIN pgingest.chunks AS c ON c.profile_id = {pid} AND c.doc_id = r.doc_id"
            " INNER JOIN pgingest.{st} AS v ON v.doc_id = c.doc_id AND v.ordinal = c.ordinal"
            "   AND v.chunk_hash = c.chunk_hash"
            " WHERE r.source_id = {sid}"
        ).format(
            view=view,
            dim=sql.Literal(p.dimensions),
            cols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols),
            tbl=sql.Identifier(p.table_schema, p.table_name),
            match=match,
            pid=sql.Literal(profile_id),
            st=sql.Identifier(store_name),
            sid=sql.Literal(sid),
        )
    )
    conn.execute(
        sql.SQL("COMMENT ON VIEW {} IS {}").format(
            view,
            sql.Literal(
                f"pgai's {p.view_name} view over pgingest's chunks and vectors of model "
                f"{p.model} (pgingest adopt pgai --compat-view); pgai's own view: {renamed}"
            ),
        )
    )
    return f"{p.view_schema}.{p.view_name}"


def _later_compat_view(conn: psycopg.Connection[Any], p: Plan) -> str | None:
    """``--compat-view`` on an adopted vectorizer: the view, unless it is there already."""
    comment = _one(
        conn,
        "SELECT obj_description(to_regclass(format('%%I.%%I', %s::text, %s::text)), 'pg_class')",
        (p.view_schema, p.view_name),
    )
    if (comment or "").startswith(f"pgai's {p.view_name} view over pgingest"):
        return None
    found = conn.execute(
        "SELECT s.id, m.profile_id, m.store_name FROM pgingest.sources AS s, pgingest.models AS m"
        " WHERE s.name = %s AND m.name = %s",
        (p.source, p.model),
    ).fetchone()
    if found is None:
        raise Refusal(p.vectorizer, "--compat-view", f"no pgingest model {p.model} (give --model)")
    with conn.transaction():
        return _compat_view(conn, p, found[0], found[1], found[2])


def adopt(
    conninfo: str | None,
    p: Plan,
    *,
    lock_timeout: str = "10s",
    compat_view: bool = False,
    build_index: bool = True,
    allow_insecure_http: bool = False,
    before_lock: Callable[[], None] | None = None,
) -> AdoptResult:
    """Adopts the vectorizer of plan ``p`` (see the module's docstring); a plan whose state is
    ``adopted`` changes nothing."""
    from pgingest import db, index

    res = AdoptResult(vectorizer=p.vectorizer, source=p.source, model=p.model, changed=False)
    if p.state == "adopted":
        if compat_view:  # asked for on a later run: the view alone
            with db.connect(conninfo, application_name=APPLICATION_NAME) as conn:
                res.compat_view = _later_compat_view(conn, p)
            res.changed = res.compat_view is not None
        return res
    with db.connect(conninfo, application_name=APPLICATION_NAME) as conn:
        _check_role(conn)
        _register_model(conn, p, allow_insecure_http)
        _settle_backfill_fence(conn, p.model)
        _cutover(
            conn,
            p,
            lock_timeout=lock_timeout,
            compat_view=compat_view,
            res=res,
            before_lock=before_lock,
        )
    res.changed = True
    if build_index:
        built = index.build_index(conninfo, p.model, progress=False)
        res.index = f"{built.index_name} {built.action}"
    return res


# -- verification and --drop-pgai ------------------------------------------------------------


def verify(conn: psycopg.Connection[Any], p: Plan) -> list[str]:
    """Problems that forbid dropping pgai's objects (empty: pgingest holds everything): every
    row of the table registered, every current key of pgai's store served by pgingest with as
    many chunks, pgai's triggers off and its queue empty."""
    from psycopg import sql

    problems: list[str] = []
    if p.state != "adopted":
        return [f"{p.vectorizer} is not adopted yet (run pgingest adopt pgai first)"]
    found = conn.execute(
        "SELECT s.id, m.store_name FROM pgingest.sources AS s, pgingest.models AS m"
        " WHERE s.name = %s AND m.name = %s AND m.state <> 'retired'",
        (p.source, p.model),
    ).fetchone()
    if found is None:
        return [f"no live pgingest model {p.model} (give the adopted model's name with --model)"]
    sid, store_name = found
    tbl = sql.Identifier(p.table_schema, p.table_name)
    n_rows = _one(conn, sql.SQL("SELECT count(*) FROM {}").format(tbl))
    n_reg = _one(conn, "SELECT count(*) FROM pgingest.source_rows WHERE source_id = %s", (sid,))
    if n_rows != n_reg:
        problems.append(f"{p.table} has {n_rows} rows, pgingest registered {n_reg}")
    missing = _one(
        conn,
        sql.SQL(
            "SELECT count(*) FROM pgingest.source_rows AS r WHERE r.source_id = %s"
            " AND NOT EXISTS (SELECT 1 FROM pgingest.{st} AS v WHERE v.doc_id = r.doc_id)"
            " AND NOT EXISTS (SELECT 1 FROM pgingest.dead_letters AS l"
            "   WHERE l.doc_id = r.doc_id AND l.model = %s)"
        ).format(st=sql.Identifier(store_name)),
        (sid, p.model),
    )
    if missing:
        problems.append(f"{missing} rows have no vector in pgingest.{store_name} yet")
    on = _one(
        conn,
        "SELECT count(*) FROM pg_catalog.pg_trigger AS t WHERE t.tgrelid = to_regclass(%s)"
        " AND t.tgname IN (%s, %s) AND t.tgenabled <> 'D'",
        (p.table, p.trigger_name, p.trigger_name + "_truncate"),
    )
    if on:
        problems.append(f"pgai's trigger {p.trigger_name} is enabled again")
    q = _one(
        conn,
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(p.queue_schema, p.queue_table)),
    )
    if q:
        problems.append(f"pgai's queue {p.queue_table} holds {q} items again")
    return problems


def drop_pgai(conn: psycopg.Connection[Any], p: Plan) -> list[str]:
    """Drops pgai's objects of an adopted, verified vectorizer: its catalog row, trigger, trigger
    function, queue tables (``ai.drop_vectorizer``), its store and its view (pgai's own: the
    renamed ``<view>_pgai`` when ``--compat-view`` took the name). Returns what was dropped."""
    from psycopg import sql

    problems = verify(conn, p)
    if problems:
        raise Refusal(p.vectorizer, "--drop-pgai", "not verified: " + "; ".join(problems))
    dropped = []
    with conn.transaction():
        view = p.view_name
        renamed = (p.view_name + "_pgai")[:63]
        reg = "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))"
        if _one(conn, reg, (p.view_schema, renamed)):
            view = renamed
        conn.execute("SELECT ai.drop_vectorizer(%s, drop_all => false)", (p.vectorizer_id,))
        dropped.append(f"ai.vectorizer {p.vectorizer}, trigger {p.trigger_name}, queue tables")
        comment = _one(
            conn,
            "SELECT obj_description(to_regclass(format('%%I.%%I', %s::text, %s::text)), 'pg_class')",
            (p.view_schema, view),
        )
        if _one(conn, reg, (p.view_schema, view)) and not (comment or "").startswith(
            f"pgai's {p.view_name} view over pgingest"
        ):
            conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(p.view_schema, view)))
            dropped.append(f"view {p.view_schema}.{view}")
        if _one(conn, reg, (p.store_schema, p.store_table)):
            conn.execute(
                sql.SQL("DROP TABLE {}").format(sql.Identifier(p.store_schema, p.store_table))
            )
            dropped.append(f"table {p.store_schema}.{p.store_table}")
    return dropped


# -- the command -----------------------------------------------------------------------------


def _positive_int(value: str) -> int:
    """argparse type of ``--max-input-tokens``: a whole number above 0 (a usage error, exit 2)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def add_adopt_commands(subparsers: Any) -> argparse.ArgumentParser:
    """``pgingest adopt pgai ...``."""
    p = subparsers.add_parser(
        "adopt",
        help="take over another tool's embeddings in place (pgai vectorizers)",
        description="Take over another tool's embeddings in place, without re-embedding.",
    )
    sub = p.add_subparsers(dest="adopt_command", required=True)
    a = sub.add_parser(
        "pgai",
        help="adopt pgai vectorizers: source, model, vectors, queue, one-transaction cut-over",
        description=(
            "Adopts pgai vectorizers (ai.vectorizer): a pgingest source on the same table, a "
            "model with the same endpoint, pgai's stored vectors as the model's (no provider "
            "call), and a one-transaction cut-over from pgai's trigger to pgingest's capture. "
            "Nothing of pgai's is dropped unless --drop-pgai is given on a later run. "
            "Runs as a superuser or the owner of the pgingest schema. "
            "See docs/migrating-from-pgai.md."
        ),
    )
    a.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="VECTORIZER",
        help="pgai vectorizer name (ai.vectorizer.name); repeat; default: all",
    )
    a.add_argument("--source", help="pgingest source name (default: the table's name)")
    a.add_argument("--model", help="pgingest model name (default: pgai_<vectorizer id>_<table>)")
    a.add_argument(
        "--max-input-tokens",
        type=_positive_int,
        help="the model's input limit (default: 8191 for OpenAI, 512 otherwise)",
    )
    a.add_argument(
        "--metric",
        choices=METRICS,
        help="the model's metric instead of the one of pgai's HNSW index (required for an L1 "
        "index, vector_l1_ops: pgingest has no L1; the plan lists the change)",
    )
    a.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    a.add_argument(
        "--compat-view",
        action="store_true",
        help="replace pgai's <table>_embedding view by one with its name and columns over "
        "pgingest's data (pgai's is renamed <view>_pgai)",
    )
    a.add_argument(
        "--drop-pgai",
        action="store_true",
        help="on an adopted vectorizer: verify, then drop pgai's catalog row, trigger, queue, "
        "store and view",
    )
    a.add_argument("--no-index", action="store_true", help="do not build the ANN index now")
    a.add_argument(
        "--lock-timeout",
        default="10s",
        help="give up the cut-over when the table's lock is not granted within this "
        "(default %(default)s; a rerun tries again)",
    )
    a.add_argument("--allow-insecure-http", action="store_true", help="as in model add")
    a.add_argument("--json", action="store_true", help="JSON output")
    cli_support.add_database_url(a)
    a.set_defaults(func=cmd_adopt_pgai)
    return p


def cmd_adopt_pgai(args: argparse.Namespace) -> int:
    from pgingest import db

    def run() -> int:
        with db.connect(args.database_url, application_name=APPLICATION_NAME) as conn:
            try:
                plans = plan_all(
                    conn,
                    args.name,
                    source=args.source,
                    model=args.model,
                    max_input_tokens=args.max_input_tokens,
                    metric=args.metric,
                )
            except Refusal as exc:
                print(f"pgingest adopt pgai: refused: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            except (LookupError, ValueError) as exc:
                print(f"pgingest adopt pgai: {exc}", file=sys.stderr)
                return EXIT_INVALID
            if not plans:
                print("pgingest adopt pgai: no vectorizer in ai.vectorizer", file=sys.stderr)
                return EXIT_INVALID
            if args.dry_run:
                if args.json:
                    print(json.dumps([asdict(p) for p in plans], indent=2))
                else:
                    for p in plans:
                        print("\n".join(p.lines()))
                return 0
            if args.drop_pgai:
                try:
                    for p in plans:
                        for what in drop_pgai(conn, p):
                            print(f"{p.vectorizer}: dropped {what}")
                except Refusal as exc:
                    print(f"pgingest adopt pgai: refused: {exc}", file=sys.stderr)
                    return EXIT_REFUSED
                return 0
            try:
                _check_role(conn)
            except PermissionError as exc:
                print(f"pgingest adopt pgai: {exc}", file=sys.stderr)
                return EXIT_ERROR
        results = []
        for p in plans:
            try:
                r = adopt(
                    args.database_url,
                    p,
                    lock_timeout=args.lock_timeout,
                    compat_view=args.compat_view,
                    build_index=not args.no_index,
                    allow_insecure_http=args.allow_insecure_http,
                )
            except Refusal as exc:
                print(f"pgingest adopt pgai: refused: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            results.append(r)
            if not args.json:
                if p.state == "adopted":
                    print(
                        f"{p.vectorizer}: adopted already (source {r.source}, model {r.model})"
                        + (f"; view {r.compat_view} created" if r.compat_view else "")
                    )
                    continue
                print(
                    f"{p.vectorizer}: adopted as source {r.source}, model {r.model}: "
                    f"{r.rows_registered} rows registered, {r.chunks_adopted} chunks and vectors "
                    f"adopted ({r.documents_embedded} rows current), {r.queued} rows queued "
                    f"({r.moved_from_pgai} moved from pgai's queue); lock on {p.table} held "
                    f"{r.lock_held_s:.3f} s (waited {r.lock_wait_s:.3f} s)"
                    + (f"; view {r.compat_view}" if r.compat_view else "")
                    + (f"; index {r.index}" if r.index else "")
                )
        if args.json:
            print(json.dumps([asdict(r) for r in results], indent=2))
        return 0

    return cli_support.run_reporting_db_errors("pgingest adopt pgai", run)
