"""Named SQL queries over the result store and the HTML dashboard built from them."""
