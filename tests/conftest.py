pytest_plugins = ["tests.fixtures.aws", "tests.fixtures.kube", "tests.fixtures.operator"]
