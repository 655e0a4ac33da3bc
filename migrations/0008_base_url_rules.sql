-- pgingest 0008: what a model's base_url may be (issue 18, item 13).
--
-- Before: models_base_url_loopback_or_https checked only '^https?://', so a bearer key could go
-- out in cleartext to any host, and credentials (user:pass@) or a key in the query string
-- (?api-key=...) were stored where readers and monitors see them.
--
-- After (pgingest.register_model gives the same rules as 22023 errors, sql/030_models.sql):
-- * models_base_url_loopback_or_https: https:// to any host; http:// only to a loopback host
--   (127.0.0.0/8, [::1], localhost), or to any host where the model's new column
--   allow_insecure_http is true (register_model(..., allow_insecure_http => true)).
-- * models_base_url_no_secrets: no userinfo (user:pass@host), no key-like query parameter (the
--   names the provider client refuses: *key, *token, *secret, *password, *signature, *credential,
--   sig, auth, pwd, pass), no fragment, no space, control character or backslash.
--
-- Existing rows never make the upgrade fail (docs/deployment.md, "Upgrading: base_url rules"):
-- * an http:// model on a non-loopback host gets allow_insecure_http = true (it keeps working as
--   before), named in a NOTICE;
-- * credentials, key-like query parameters and a fragment are removed from the stored URL, named
--   (model only, never the URL) in a WARNING. The provider client has refused such URLs since
--   issue 18 (the worker paused the model), so no working model changes behaviour; give the key
--   with api_key_env;
-- * the constraints are added NOT VALID and validated when every row then passes; a row that
--   still fails (spaces or control characters) is named in a WARNING and the constraints stay
--   NOT VALID until it is fixed (ALTER TABLE pgingest.models VALIDATE CONSTRAINT ...).
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.models
ADD COLUMN allow_insecure_http boolean NOT NULL DEFAULT FALSE;

COMMENT ON COLUMN pgingest.models.allow_insecure_http IS
'True lets base_url be http:// to a host that is not loopback (the API key then travels in cleartext); '
'register_model(..., allow_insecure_http => true).';

DO $base_url$
DECLARE
    v_secret constant text :=
        '^([a-z0-9_.-]*(key|token|secret|password|passwd|signature|credential)s?|sig|auth|pwd|pass)(=|$)';
    v_loopback constant text :=
        '^http://(localhost|127(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[::1\])(:[0-9]{1,5})?([/?]|$)';
    v_m record;
    v_url text;
    v_query text;
    v_params text[];
    v_insecure text[] := '{}';
    v_cleaned text[] := '{}';
BEGIN
    FOR v_m IN SELECT m.name, m.base_url FROM pgingest.models AS m ORDER BY m.name LOOP
        v_url := v_m.base_url;
        -- userinfo, then the fragment, then key-like query parameters
        v_url := regexp_replace(v_url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1');
        v_url := split_part(v_url, '#', 1);
        IF strpos(v_url, '?') > 0 THEN
            v_query := substr(v_url, strpos(v_url, '?') + 1);
            v_params := ARRAY(
                SELECT p.param FROM unnest(regexp_split_to_array(v_query, '[&;]')) WITH ORDINALITY AS p (param, n)
                WHERE p.param <> '' AND p.param !~* v_secret
                ORDER BY p.n
            );
            v_url := substr(v_url, 1, strpos(v_url, '?') - 1)
                || CASE WHEN cardinality(v_params) > 0 THEN '?' || array_to_string(v_params, '&') ELSE '' END;
        END IF;
        IF v_url <> v_m.base_url THEN
            UPDATE pgingest.models AS m SET base_url = v_url WHERE m.name = v_m.name;
            v_cleaned := v_cleaned || v_m.name;
        END IF;
        IF v_url ~ '^http://' AND v_url !~* v_loopback THEN
            UPDATE pgingest.models AS m SET allow_insecure_http = TRUE WHERE m.name = v_m.name;
            v_insecure := v_insecure || v_m.name;
        END IF;
    END LOOP;
    IF cardinality(v_insecure) > 0 THEN
        RAISE NOTICE 'pgingest: models with an http:// base_url on a host that is not loopback: %; '
            'allow_insecure_http set for them, so they keep working',
            array_to_string(v_insecure, ', ')
            USING HINT = 'Their API key travels in cleartext. Move them to https:// '
                         '(UPDATE pgingest.models SET base_url = ..., allow_insecure_http = false WHERE name = ...).';
    END IF;
    IF cardinality(v_cleaned) > 0 THEN
        RAISE WARNING 'pgingest: credentials, key-like query parameters or a fragment removed from the '
            'base_url of models: %', array_to_string(v_cleaned, ', ')
            USING HINT = 'The provider client already refused these URLs (the worker paused the model). '
                         'Give the API key with api_key_env, then pgingest model resume <name>.';
    END IF;
END;
$base_url$;

ALTER TABLE pgingest.models
DROP CONSTRAINT models_base_url_loopback_or_https,
ADD CONSTRAINT models_base_url_loopback_or_https CHECK (
    base_url ~ '^https://[^/?#]'
    OR base_url ~ '^http://[^/?#]' AND (
        allow_insecure_http
        OR base_url
        ~* '^http://(localhost|127(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[::1\])(:[0-9]{1,5})?([/?]|$)'
    )
) NOT VALID,
ADD CONSTRAINT models_base_url_no_secrets CHECK (
    base_url !~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
    AND strpos(base_url, '#') = 0
    AND base_url !~ '[[:cntrl:][:space:]\\]'
    AND base_url
    !~* '\?(.*[&;])?([a-z0-9_.-]*(key|token|secret|password|passwd|signature|credential)s?|sig|auth|pwd|pass)([=&;]|$)'
) NOT VALID;

DO $validate$
DECLARE
    v_bad text;
BEGIN
    SELECT string_agg(m.name, ', ' ORDER BY m.name) INTO v_bad
    FROM pgingest.models AS m
    WHERE NOT (
        (
            m.base_url ~ '^https://[^/?#]'
            OR m.base_url ~ '^http://[^/?#]' AND (
                m.allow_insecure_http
                OR m.base_url
                ~* '^http://(localhost|127(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[::1\])(:[0-9]{1,5})?([/?]|$)'
            )
        )
        AND m.base_url !~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@'
        AND strpos(m.base_url, '#') = 0
        AND m.base_url !~ '[[:cntrl:][:space:]\\]'
        AND m.base_url
        !~* '\?(.*[&;])?([a-z0-9_.-]*(key|token|secret|password|passwd|signature|credential)s?|sig|auth|pwd|pass)([=&;]|$)'
    );
    IF v_bad IS NULL THEN
        ALTER TABLE pgingest.models VALIDATE CONSTRAINT models_base_url_loopback_or_https;
        ALTER TABLE pgingest.models VALIDATE CONSTRAINT models_base_url_no_secrets;
    ELSE
        RAISE WARNING 'pgingest: the base_url of models % breaks the base_url rules; the constraints '
            'models_base_url_loopback_or_https and models_base_url_no_secrets stay NOT VALID', v_bad
            USING HINT = 'Fix the URL (UPDATE pgingest.models SET base_url = ...), then ALTER TABLE pgingest.models '
                         'VALIDATE CONSTRAINT ... for both. Until then an UPDATE of that model''s row fails.';
    END IF;
END;
$validate$;
