"""The rule runtime: loading, matching, evaluating, templates, vocabulary, simulation and rule tests."""
