"""One module per data set, returning plain numpy arrays that `fedadamw.data.split` caches.

Each module has `load(data, cache, **values)`: `data` is the data set's record in
`fedadamw.data.registry`, `cache` the folder for what is slow to make, `values` the record's
generator keys (DataSpec fields) by name. It returns a dict with float32 features `x` / `x_test`,
int64 labels `y` / `y_test` and, for data sets with a natural client split, int64 `groups` (the
client of each train row; `groups_test` for test rows where the data set has it).
"""
