"""Local servers that speak each network's real API, for `relaybird demo` and the tests."""
