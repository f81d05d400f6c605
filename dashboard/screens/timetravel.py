from faultstream.dashboard.views import timetravel

timetravel.render()
