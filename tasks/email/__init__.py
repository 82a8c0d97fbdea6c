"""Email jobs: templated mail over SMTP, sent exactly once, campaigns with a global rate limit."""
