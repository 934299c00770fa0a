"""Process machinery: workers, reloads and the accepted-version follower, memory, observability, security."""
