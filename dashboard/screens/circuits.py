from faultstream.dashboard.views import circuits

circuits.render()
