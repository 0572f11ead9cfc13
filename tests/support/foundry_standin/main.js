'use strict';
// Entry point of the stand-in Foundry release (CommonJS): the server lives in server.cjs.
require('./server.cjs');
