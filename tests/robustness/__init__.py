"""Bad-input, fault-injection and security tests (run by ``python -m hmrmamba.report.reliability``)."""
