pytest_plugins = [
    "tests.fixtures.aws",
    "tests.fixtures.helm",
    "tests.fixtures.kube",
    "tests.fixtures.operator",
]
