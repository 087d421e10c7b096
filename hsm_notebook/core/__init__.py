"""The core: state, errors, parameter space, the ComputeSource ABC, store, manager, Sweep."""
