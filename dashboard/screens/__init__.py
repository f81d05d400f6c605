"""Page scripts for `st.navigation` (files, so AppTest can switch to them); each draws
one page of `faultstream.dashboard.views`."""
