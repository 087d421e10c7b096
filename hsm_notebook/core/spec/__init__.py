"""What to run: the parameter space, sweep files, a reference project's config, Hydra overrides,
environments, functions as jobs, the job template and its files (JobPaths), job options and the
retry policy.  Over the model only."""
