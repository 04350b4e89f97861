"""The write side: corpus -> edge fitting -> shard extraction -> staging -> atomic assembly of an index
directory. Never imports the HTTP layer (checked by import-linter)."""
