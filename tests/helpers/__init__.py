"""What the tests share: the real config tree composed with overrides (configs), generated data in the official
layouts (fake_data), and the entry points run as real processes (processes). Fixtures live in conftest.py."""
