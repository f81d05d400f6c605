from faultstream.dashboard.views import tuning

tuning.render()
