"""Helper servers Reprise can install and run for the user (tests, `reprise up`)."""
