"""SQL for each dialect: runtime statements as named constants, schema as numbered files."""
