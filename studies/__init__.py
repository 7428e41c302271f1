"""Research studies and regression records: scripts that train, probe or compare runs and print
what they find (speed and memory benchmarks are in benchmarks/).

Run each from the repository root, as a module or by its path:

    python -m studies.seeds --help
    python studies/seeds.py --help
"""
