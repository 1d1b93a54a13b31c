"""The multi-host container lab: a Debian image, nine systemd hosts, and the deploy over SSH."""
