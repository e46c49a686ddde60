"""Data: the procedural shapes dataset and its alignment reader, and captioned image folders (metadata.jsonl)."""
