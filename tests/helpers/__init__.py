"""What several test modules share: the brute-force references, small models and data."""
