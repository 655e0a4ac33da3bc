-- Installer template: after detect.sql, where pgingest.schema_migrations exists: pgmq's SQL
-- scripts that pgingest applied (none where pgmq is the extension).

SELECT m.version
FROM pgingest.schema_migrations AS m
WHERE m.version LIKE 'pgmq--%'
ORDER BY m.version;
