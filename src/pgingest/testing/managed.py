"""A database set up like a managed service's (issue 23), for the managed-like test suite and
``scripts/chaos.py --managed``: an owner role with CREATEDB and CREATEROLE that is not a
superuser (as Amazon RDS's master user), ``vector`` created by the superuser (an allow-listed
extension), no plpython3u, and an event trigger that refuses every other ``CREATE EXTENSION``
(pgmq's control file says ``superuser = false``, so without it the owner could create pgmq)."""

from __future__ import annotations

ALLOW_LIST = """
CREATE SCHEMA managed_service;
CREATE FUNCTION managed_service.refuse_create_extension() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'managed-like service: CREATE EXTENSION is refused in this database'
        USING ERRCODE = '{code}';
END;
$$;
CREATE EVENT TRIGGER managed_service_allow_list ON ddl_command_start
WHEN TAG IN ('CREATE EXTENSION') EXECUTE FUNCTION managed_service.refuse_create_extension();
"""
"""Run by the superuser in the database (``{code}``: the SQLSTATE of the refusal)."""
