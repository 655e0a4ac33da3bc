-- pgingest 0024: the locks that serialise the compilations of the capture triggers and the model
-- lifecycle are tables, no longer advisory locks.
--
-- pg_advisory_xact_lock needs no privilege: any role that could connect to the database (a
-- pgingest role or not) held pg_advisory_lock(1886808435, -1) or the lifecycle's key and made
-- register_model, retire_model, swap_model, add_source, remove_source and every install wait for
-- as long as it liked (review 2026-12-07). LOCK TABLE in EXCLUSIVE MODE needs UPDATE, DELETE or
-- TRUNCATE on the table, which nobody but the owner of pgingest has (admins get SELECT at most:
-- ACCESS SHARE, which conflicts with neither lock). The tables stay empty.
-- Run once by the installer; never edit after release.

CREATE TABLE pgingest.compile_lock ();

COMMENT ON TABLE pgingest.compile_lock IS
'Always empty: locked IN EXCLUSIVE MODE while the capture triggers are compiled (_compile_enqueue, '
'_compile_source_capture_now), one compilation at a time.';

CREATE TABLE pgingest.lifecycle_lock ();

COMMENT ON TABLE pgingest.lifecycle_lock IS
'Always empty: locked IN EXCLUSIVE MODE by _lifecycle_lock (register_model, swap_model, retire_model, '
'shift_traffic) until the end of the transaction.';
