"""The core, in layers; a module imports only from its own layer or those below it (lowest first).

- ``model/``: job states, the error tree (``HsmError`` and its children), small file helpers.
  Imports nothing else of the package.
- ``spec/``: what to run: the parameter space, sweep files, a project's config, Hydra overrides,
  environments, functions as jobs, the job template and its files (``JobPaths``), the shared job
  options and the retry policy.
- ``base/``: the seven-method ``ComputeSource`` ABC and the toolkit sources are built from: the
  registry, interpreter and environment preparation, batching, the remote-host protocol, one
  command runner, GPU pins.
- ``ledger/``: the sweep folder and its SQLite ledger: files, store, steps, frames, read-only views,
  events, and how a sweep is recorded and rebuilt.
- ``engine/``: ``DistributedJobManager``, composed of its run state (the one holder of run facts),
  submission, dispatch, polling and collection, supervision, retries, health monitoring and user
  control.
- ``sweep.py`` / ``launch.py``: ``Sweep``, the user's entry point, and sweep file + project ->
  ``Sweep`` arguments.  ``_loop.py`` is the package's background event loop (bottom layer).

Concrete sources (``hsm_notebook.sources``) sit over ``base/`` (never the ledger or the engine);
``ui/`` and ``cli.py`` sit over ``Sweep``.  ``tests/test_layering.py`` checks the order and that no
import cycle exists.
"""
