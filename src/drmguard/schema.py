"""Names of the file formats drmguard writes (one place for each version string)."""

SCAN_SCHEMA = "drmguard.scan/1"  # scan result JSON (docs/report-schema.md)
TRIGGER_FORMAT = "drmguard.trigger/1"  # a saved reversed trigger (ScanResult.save)
