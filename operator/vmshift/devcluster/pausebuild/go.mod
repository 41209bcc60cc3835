// The development node's pod sandbox program: no dependencies.
module vmshift.io/pause

go 1.25.0
