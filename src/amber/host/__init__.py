"""This host's processes, owners and mounts: what Amber needs to start children that cannot outlive it and to
find and remove what a dead Amber process left behind. Linux only (``/proc``); no other ``amber`` import.

Public API:

- ``owners``: ``Owner`` (pid + kernel start time, so a reused PID is never mistaken for its predecessor),
  ``Owner.current()``, ``Owner.alive``, ``write_owner(path)`` / ``read_owner(path)``, ``process_start_time(pid)``
- ``processes``: ``spawn(argv, death_signal=…)`` (a child that gets ``death_signal`` when this process dies),
  ``pids_using(directory)`` (processes whose command line or working directory is under it), ``stop(pid)``
  (SIGTERM, then SIGKILL), ``kill_and_wait(pid)``, ``running(pid)``
- ``mounts``: ``mounts_under(directory)`` (deepest first), ``is_mount_point(path)``, ``unmount(path)``
- ``files``: ``remove(path)`` (a tree or file; None when gone, else why not)

Guarantees: processes are only ever signalled by PID after checking they are what the caller named (a command
line or working directory under the caller's directory, or a recorded owner's start time); nothing is matched by
program name.
"""
