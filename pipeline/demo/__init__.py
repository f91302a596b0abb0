"""Synthetic CASME II and SAMM copies made from one public-domain portrait (`mer demo-data`).

The real datasets cannot be redistributed, so the demo pipeline, the tests and the benchmarks run on
copies that have the real folder layouts and coding spreadsheets and that hold
learnable micro-expressions:

- several "subjects" are made from the bundled portrait (NASA, public domain): the head is cut out
  with a soft mask, scaled, rotated, mirrored, gently reshaped, re-lit and put on a plain or
  gradient background (`looks`, `face`);
- each clip warps that subject's face smoothly around its 68 landmarks with a few pixels of
  displacement, one facial-action pattern per emotion class (`patterns`), scaled over time by an
  intensity curve that rises from the onset to the apex and decays towards the offset (`motion`);
- sensor noise and JPEG compression are added, and the coding spreadsheets carry the quirks of the
  real ones: missing apexes written `/` or `-1`, mixed integer and text cells, preamble rows
  (`sheets`).

Everything is decided from the seed before any pixel is drawn (`plan`); only `generate` touches
disk. Every clip draws its random numbers from (seed, dataset, subject, clip), so the output does
not depend on the number of parallel jobs, and the same seed gives byte-identical files.
"""
