"""One small loader per file format; :mod:`reprise.rag.ingest` picks one by magic bytes."""
