"""Dynamic images: rank pooling, phase intervals, the DI cache of a samples table, preview sheets."""
