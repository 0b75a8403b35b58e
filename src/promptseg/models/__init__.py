"""Model families: ``sam`` (and, as they land, ``seem`` and ``seggpt``)."""
