"""Hardware descriptions and the roofline that turns an operation into time on a device."""
