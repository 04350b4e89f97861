"""The round's algorithm, pure: the adaptive K rule, the sample plan and the selection state (nothing
here talks to the service or reads files)."""
