// Entry point of the stand-in Foundry release (ES module): the server lives in server.cjs.
import { createRequire } from 'node:module';

createRequire(import.meta.url)('./server.cjs');
