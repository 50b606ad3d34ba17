"""Online feature stores: the `OnlineStore` protocol with memory and Valkey backends."""
