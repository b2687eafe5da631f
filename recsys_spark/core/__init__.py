"""The floor every other package stands on: typed config, table names and schemas, the lakehouse
(Delta access), the Spark session, and the stage context and result."""
