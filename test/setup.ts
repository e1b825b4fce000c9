/**
 * Pulumi's mock runtime, set up once before any test imports a component: every
 * resource the code registers is recorded (see test/mocks.ts) instead of created.
 * setMocks does its work synchronously; the promise it returns carries nothing.
 */
import { installMocks } from "./mocks";

void installMocks();
