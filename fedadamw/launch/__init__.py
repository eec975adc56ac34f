"""launch layer: the processes that start the apps (supervisor, simulation, Ray, cluster sweeps)."""
