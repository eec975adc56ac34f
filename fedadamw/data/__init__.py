"""The data layer: the data set registry, one loader per data set, the split across clients."""
