"""What rank 0 asks the retrieval service (only through ``services.client``): fixed queries, neighbor windows,
source images, the per-mode source selection, the leakage guard and the job's events."""
