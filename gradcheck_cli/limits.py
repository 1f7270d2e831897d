"""Size caps against hostile input, stated once (the loader enforces them; the command line's
``--max-elements`` and ``--max-array-mb`` default to them). No imports: the CLI reads these at
start-up."""

#: Most elements an inline YAML array may hold (guards memory against hostile files, including
#: alias expansion: 10 million Python floats take about 400 MB).
MAX_ELEMENTS = 10_000_000
#: Largest spec file read (32 MiB of YAML takes seconds to parse; large arrays belong in .npy).
MAX_SPEC_BYTES = 32 * 2**20
#: Largest array a spec may load from a .npy/.npz file (640 MiB: a 4096 x 32000 float32 batch
#: of logits is 500 MiB, and checking it peaks at 1.3 GB).
MAX_ARRAY_BYTES = 640 * 2**20
