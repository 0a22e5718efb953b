// The system's own Go programs: every main package under cmd/ becomes /usr/local/bin/NAME in the
// image, built by ramroot for the image's architecture (README: Go programs). With
// GOTOOLCHAIN=auto, the toolchain line selects the Go that builds them (a newer local Go wins).
module ramroot.example/system

go 1.24

toolchain go1.26.8
