from faultstream.dashboard.views import recovery

recovery.render()
