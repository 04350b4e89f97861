"""The read side: the source corpus (ImageFolder trees, tar shards), the SQLite manifest, and a built index
loaded and verified from its directory."""
