"""The model: job states, the error tree, and the small file helpers every layer uses.  Imports
nothing else of the package."""
