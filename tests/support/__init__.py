"""Helpers and fakes shared by the tests (imported as ``tests.support.<module>``): model repositories
and servers to test against, fake runtimes, reference implementations, test data builders."""
