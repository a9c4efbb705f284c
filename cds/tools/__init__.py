"""The tools people run: the `twitch-cds` command line, evaluate, check-rules, the clinical
logic table and the tester's demo. They may use every other package."""
