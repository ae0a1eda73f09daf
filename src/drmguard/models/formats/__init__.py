"""Model file formats, one module each; :mod:`drmguard.models.io` recognises a file and hands it
to its format's loader (``io.LOADERS``)."""
