"""``python -m ringd.sim``: how the demo and run_writers' writer children start the simulator."""

from ringd.sim.cli import sim_main

if __name__ == "__main__":
    raise SystemExit(sim_main())
